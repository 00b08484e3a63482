"""Local emulation of Knative Eventing (KafkaSource, PingSource) from the knative/ manifests."""

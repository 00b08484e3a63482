"""Training engines beyond the single process of `zerorec.pipeline`: Spark (`spark`), stage
progress (`progress`) and large synthetic logs for scale runs (`scale_data`)."""

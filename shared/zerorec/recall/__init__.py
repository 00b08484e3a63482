"""Recall channels behind one interface, and the merger."""

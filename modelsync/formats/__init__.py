"""Renderers for pipelines: a Markdown plan, JUnit XML, Prometheus metrics, and more."""

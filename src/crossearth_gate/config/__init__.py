"""Configuration: the run config schema, its loading from YAML with overrides, and its checks."""

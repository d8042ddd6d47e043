"""Bytes from elsewhere into staging (HTTP origins, S3 buckets); never touches the catalog."""

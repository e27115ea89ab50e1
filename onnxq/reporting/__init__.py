"""Reporting: evaluation on images, bit accounting, the report command's tables."""

"""Block reconstruction with torch (the ``reconstruct`` extra): learned rounding and steps."""

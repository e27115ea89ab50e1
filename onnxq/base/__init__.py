"""Foundation: errors, metadata keys, shared constants, output and progress helpers."""

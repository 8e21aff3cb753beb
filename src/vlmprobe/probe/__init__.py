"""Step 1: probe the target VLM, explain each failure with a probing factor, verify it."""

"""Step 3: targeted QA pairs for one shard of the sampled failures, from Gemini."""

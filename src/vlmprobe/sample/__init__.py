"""Step 2: sample a balanced set of verified failures per failure key and plan the QA shards."""

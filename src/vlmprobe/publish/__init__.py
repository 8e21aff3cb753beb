"""Step 4: check every output of the run and write its manifest."""

"""The teacher: Gemini through google-genai (async), its prompts, schemas and retry policy."""

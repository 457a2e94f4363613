"""An OpenAI-compatible HTTP server over the engine's continuous-batching scheduler."""

"""UniGenBench (Pref-GRPO's benchmark): load the prompt files, generate, judge with a VLM over an
OpenAI-compatible API, aggregate per dimension and theme, and report."""

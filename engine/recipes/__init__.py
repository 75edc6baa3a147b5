"""Prompt-to-prompt graph builders behind `/api/generate`: a plain request -> an API-format prompt.

No HTTP here: the server parses requests and maps `RecipeError` to its error shape. `generate` builds the
prompt, `variants` knows the shipped workflows, `conditioning` adds FLUX.1 fill / Kontext / Redux / LoRAs.
"""

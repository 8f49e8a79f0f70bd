"""Evaluation: task files, exact match and perplexity with transformers, and what
`mergepkg eval` accepts as a model (folders, hub repos, recipes, steps)."""

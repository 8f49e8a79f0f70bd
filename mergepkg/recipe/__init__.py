"""The recipe: its model (frozen dataclasses), names and versions, TOML parsing with
located errors, other recipes' steps joined in (flatten) and the DAG of steps (plan)."""

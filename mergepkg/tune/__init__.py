"""Parameter search over a recipe step (`mergepkg tune`): the tune file, substitution into
the recipe, samplers, the trial log, the search and its report."""

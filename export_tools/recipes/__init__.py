"""Training recipes for the bundles the project trains itself (`python -m export_tools.recipes.fashion`)."""

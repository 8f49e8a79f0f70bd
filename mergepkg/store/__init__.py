"""What lives under `$MERGEPKG_HOME`: built steps (artifacts) by key, the file hash
cache, cached evaluation results, the lock files `gc` keeps; `Session` bundles them."""

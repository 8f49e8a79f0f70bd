"""The `moe` method's recipe part (`parse`), layout (`layout`), router computation
(`gates`) and key entry (`keys`). See docs/moe.md."""

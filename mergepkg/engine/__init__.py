"""The engine: build one step from its layout, streaming tensors through the method
into the store's temp folder; memory limits, seeds, routers, side files, progress."""

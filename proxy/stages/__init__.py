"""The stages of the data path, one module each; `proxy.pipeline` lists them in order. See `proxy.exchange` for
the one interface they share."""

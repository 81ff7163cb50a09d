"""The network: builder, split attention and measured costs (the only layer of `nas` under trials)."""

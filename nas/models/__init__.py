"""The network: `network` (torch-only classes, emitted verbatim by the export), `builder` (spec ->
network, a pure function) and `costs` (measured costs). The only layer of `nas` below `trials`."""

"""The typed, validated view of ``params.yaml``, one module per area: ``base`` (what every section shares,
reading and merging), ``data``, ``features``, ``model``, ``pretrain``, ``downstream``, ``report``, and
``params`` (the whole file). A stage imports only the areas it reads, so DVC reruns it only for those."""

"""Offline tools over `dvc exp` results, run by hand (not by the pipeline): the ablation tables
(``sslam-ablations``), the encoder comparison (``sslam-encoders``) and the encoder x objective grid
(``sslam-grid``). The ``report`` stage never imports this package."""

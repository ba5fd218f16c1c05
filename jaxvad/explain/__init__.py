"""Explanations of anomalies: attribution (which modality), Grad-CAM and error maps (where),
BLIP captions (what), records and an HTML report; the command is `python -m jaxvad.explain`
(`command`)."""

"""The machinery every stage shares, apart from any environment: flags and one-line errors (`cli`),
atomic files and `config.json` (`files`), the run-directory contract (`rundir`), checks of trained
model directories (`artifacts`), Keras fit/checkpoint/resume (`training`), the stage log run.sh
writes (`stagelog`) and the scale presets (`presets`).
"""

"""The command line: entry point (:mod:`.app`), config files (:mod:`.config`), shared flags
(:mod:`.args`), output routing (:mod:`.output`) and one module per command (:mod:`.commands`).
The library never imports this package."""

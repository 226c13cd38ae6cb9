"""Defenses a client applies to what leaves it (``defenses:`` in a run config): plug-ins registered like the
attacks, the client-side composition the kit's client halves call (``client``), and the privacy accounting of the
ones that have an epsilon (``accounting``). docs/threat_model.md ("Defenses") says what each does and costs."""

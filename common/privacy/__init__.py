"""Leakage measurements: the quantities (``metrics``), the attacks of an honest-but-curious server (``attacks``,
plug-ins registered like paradigms) and what they need to run beside a federation (``observations``)."""

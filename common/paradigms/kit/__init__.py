"""What the paradigm plug-ins share, so that each paradigm is one module that imports only the API
(``slperf.common.paradigms.base``), the registry and this kit, and never another paradigm.

``steps``          training steps over modules and tensors (run on the server's compute thread or inline)
``rounds``         running clients of a round in parallel or in turn: results in client order plus who dropped
``serving``        serving a client's pass (arrival order, lock-step ``Barrier``, ``Gate``s) and evaluating
``top_server``     the server half's base where the server holds the top of a two-segment split
``bottom_client``  the client half where the client holds the bottom (activations and labels up)
``ushaped``        the U-shaped cut and its four-message exchange, server and client side
``aggregate``      FedAvg and the other pure reductions over client uploads and evaluations
"""

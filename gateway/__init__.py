"""The gateway: every program on the key joins the fleet.

==================  ==================================================================
module              what it holds
==================  ==================================================================
``links``           ``ClientLink``: one broker registration (role ``client``) per client
                    name; ask for a permit, wait (cancellable), settle
``pricing``         the most a Keepa call can cost, from its path and parameters (the
                    workers' cost model, ``common.costs``)
``clients``         who may use the gateway: named clients, hashed bearer tokens, priority
``server``          the Keepa-compatible HTTP server (stdlib ``ThreadingHTTPServer``)
``cli``             ``keepa-fleet gateway``
``client``          for users' own code: ``connect(name).permit(cost=...)`` and
                    ``use_gateway(keepa.Keepa(...))``
==================  ==================================================================
"""

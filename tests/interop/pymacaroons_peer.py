#!/usr/bin/env python3
"""The other side of the token interop test: pymacaroons (a libmacaroons-compatible
implementation) verifies and attenuates ledge tokens.

  pymacaroons_peer.py verify SECRET_HEX TOKEN      verifies the signature chain with the root
                                                    secret; prints the identifier and each caveat
  pymacaroons_peer.py attenuate TOKEN CAVEAT...     adds first-party caveats; prints the token
                                                    (V2 binary, base64url without padding)
"""
import sys

from pymacaroons import Macaroon, Verifier, MACAROON_V2
from pymacaroons.serializers import BinarySerializer


def main(command, *args):
    if command == "verify":
        secret_hex, token = args
        macaroon = Macaroon.deserialize(token, serializer=BinarySerializer())
        verifier = Verifier()
        verifier.satisfy_general(lambda predicate: True)
        verifier.verify(macaroon, bytes.fromhex(secret_hex))
        print(macaroon.identifier_bytes.decode())
        for caveat in macaroon.caveats:
            print(caveat.caveat_id_bytes.decode())
    elif command == "attenuate":
        token, *caveats = args
        macaroon = Macaroon.deserialize(token, serializer=BinarySerializer())
        assert macaroon.version == MACAROON_V2, "ledge tokens are V2"
        for caveat in caveats:
            macaroon.add_first_party_caveat(caveat)
        print(macaroon.serialize(serializer=BinarySerializer()))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(*sys.argv[1:])

# Embedding sbc in your own Twisted application.
#
#   twistd -ny examples/embed.tac
#
# The SBC is one service among yours: build it from a config and attach it to
# the application's service tree. Paths are relative to the directory you run
# twistd from (the repository root here).
from twisted.application.service import Application
from twisted.internet import reactor

from sbc.config import load_config
from sbc.service import SbcService, TlsFiles

application = Application("my-voice-platform")

tls = TlsFiles(
    certificate="examples/lab-pki/sbc.pem",
    private_key="examples/lab-pki/sbc.key",
    ca_certificates="examples/lab-pki/ca.pem",
)
sbc = SbcService.from_config(load_config("examples/lab.conf"), reactor=reactor, tls=tls)
sbc.setServiceParent(application)

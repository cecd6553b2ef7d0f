"""A worker process's own UDP port (docs/scaling.md) in the B2BUA: requests it starts leave from
it and name it in Via and Contact; flows from the shared port name it in our Contact and Via."""

from __future__ import annotations

import attrs
from twisted.trial.unittest import SynchronousTestCase

from sbc.adjacencies import AdjacencyTable
from sbc.b2bua.call import contact_for
from sbc.b2bua.nexthop import destination_flow
from sbc.config import parse_config
from sbc.sip.locate import Destination
from sbc.sip.stack import Flow
from sbc.sip.uri import parse_uri
from tests.b2bua.test_call import A_FLOW, ACCESS, CONFIG, CORE, SDP, Net, answer, invite

OWN_ACCESS = ("127.0.0.1", 40060)
OWN_CORE = ("127.0.0.1", 40062)


class LocalAddressTests(SynchronousTestCase):
    def test_udp_leaves_from_the_own_port_other_transports_from_the_adjacencys(self) -> None:
        config = parse_config(CONFIG)
        table = AdjacencyTable(config.adjacencies)
        core = config.adjacency("core")
        self.assertEqual(table.local_address(core, "UDP"), ("127.0.0.1", 5062))
        table.own_ports = {("127.0.0.1", 5062): 40062}
        self.assertEqual(table.local_address(core, "UDP"), OWN_CORE)
        self.assertEqual(table.local_address(core, "TCP"), ("127.0.0.1", 5062))
        self.assertEqual(table.local_address(config.adjacency("core2"), "UDP"), ("127.0.0.1", 5064))

    def test_destination_flow_takes_the_local_address(self) -> None:
        core = parse_config(CONFIG).adjacency("core")
        place = Destination("UDP", "10.0.0.5", 5060, "10.0.0.5")
        uri = parse_uri("sip:bob@remote.test")
        self.assertEqual(destination_flow(core, uri, place).local, ("127.0.0.1", 5062))
        self.assertEqual(destination_flow(core, uri, place, OWN_CORE).local, OWN_CORE)

    def test_contact_names_the_advertised_address(self) -> None:
        flow = Flow("UDP", ("127.0.0.1", 5060), ("192.0.2.7", 5060), advertised=OWN_ACCESS)
        self.assertEqual(contact_for(flow).uri.port, 40060)
        self.assertEqual(flow, attrs.evolve(flow, advertised=None))  # a label only


class CallThroughOwnPortsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Net()
        self.net.table.own_ports = {("127.0.0.1", 5060): 40060, ("127.0.0.1", 5062): 40062}
        self.a_flow = attrs.evolve(A_FLOW, advertised=OWN_ACCESS)

    def test_b_leg_leaves_from_the_own_port_and_a_leg_contact_names_it(self) -> None:
        sent = self.net.feed(invite(), self.a_flow, ACCESS)
        [(flow, b_invite)] = self.net.requests(sent, "INVITE")
        self.assertEqual(flow.local, OWN_CORE)
        self.assertEqual((b_invite.top_via.host, b_invite.top_via.port), OWN_CORE)
        self.assertEqual(b_invite.contacts[0].uri.port, 40062)
        # the callee answers to the own port; the caller's 200 names the caller side's own port
        b_flow = Flow("UDP", OWN_CORE, ("10.0.0.5", 5060))
        sent = self.net.feed(answer(b_invite, 200, body=SDP), b_flow, CORE)
        [(flow, ok)] = self.net.responses(sent)
        self.assertEqual(ok.status, 200)
        self.assertEqual(flow.local, ("127.0.0.1", 5060))  # the answer leaves where the INVITE came
        self.assertEqual(ok.contacts[0].uri.port, 40060)
        # the caller's BYE to that Contact: relayed to the callee from the own port
        own_a = Flow("UDP", OWN_ACCESS, A_FLOW.remote)
        bye = invite(method="BYE", to_tag=ok.to.tag, branch="z9hG4bKbye1", cseq=2, body=b"")
        sent = self.net.feed(bye, own_a, ACCESS)
        [(flow, b_bye)] = self.net.requests(sent, "BYE")
        self.assertEqual(flow.local, OWN_CORE)
        self.assertEqual(b_bye.top_via.port, 40062)

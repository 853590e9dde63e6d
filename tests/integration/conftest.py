"""Fixtures the integration tests share."""

from __future__ import annotations

import uuid

import pytest

DOMAIN_XML = ("<domain type='test'><name>{name}</name><memory>1024</memory>"
              "<os><type>hvm</type></os></domain>")


@pytest.fixture
def domain(libvirt_conn):
    """``define()``: a fresh inactive domain on test:///default, destroyed and undefined
    at the end of the test."""
    import libvirt
    defined = []

    def define():
        dom = libvirt_conn.defineXML(DOMAIN_XML.format(name=f"it-{uuid.uuid4().hex[:8]}"))
        defined.append(dom)
        return dom
    yield define
    for dom in defined:
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError:
            pass

"""lifecycle-webhook: libvirt lifecycle notifications delivered as signed CloudEvents."""

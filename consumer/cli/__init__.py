"""The commands of ``lifecycle-manage`` (parsed and dispatched by
``consumer/cmd/manage.py``), a module each, their pure parts apart from their I/O:
``tables`` (sanitised cells, prettytable), ``listing`` (instances, hosts, the queue),
``history`` (the journal: events, one instance), ``dead_letter_view`` (what a dead
letter says, pure) and ``dead_letters`` (the dead-letter queue on the broker),
``confirm`` (asking before messages are removed or republished), ``tail`` (records,
filters and lines of the live view, pure) and ``tail_loop`` (its queue and loop)."""

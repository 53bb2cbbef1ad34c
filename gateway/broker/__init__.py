"""The MQTT session and its transport: the gateway's one persistent broker session.

``session`` keeps it alive across connections (reconnects, announcements, the
publish window, acknowledgements in order, redelivery matching) through the
library-free interface in ``transport``; ``aiomqtt_transport`` implements that
interface and is the only module that imports aiomqtt or paho. ``acks`` holds
the acknowledgement state machines; ``leftovers`` clears what removed devices
left retained. It may import the core and the configuration, never a surface.
"""

"""Tools for people trying the service (`send`, `receiver`); the service never imports them."""

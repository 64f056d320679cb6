"""The web console: static pages (plain HTML, CSS and JavaScript modules) served at
`/console/` that speak the public protocol over `/v1/ws` like any client."""

"""pneumolab's Hydra launcher plugin. Hydra accepts launchers only from the hydra_plugins
package, and imports every module in it at start-up, so none of them imports much."""

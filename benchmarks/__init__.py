"""Scripts that print figures; results and commands are in benchmarks/README.md. A regular
package (not a namespace one) so that a site-packages `benchmarks` (pysbd ships one) cannot
shadow it."""

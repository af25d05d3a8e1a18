//go:build race

package main

// raceDetector is true when the race detector is on: it multiplies a
// process's memory, so memory bounds do not apply.
const raceDetector = true

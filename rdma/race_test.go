//go:build race

package rdma

// raceDetector is true when the race detector is on: sync.Pool then drops items at random, so
// code that pools (purego's call argument blocks) allocates.
const raceDetector = true

package main

import (
	"fmt"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"

	"github.com/iserd/iserd/admin"
)

// statusPeriod is how often the STATUS= line is refreshed when no
// watchdog asks for more.
const statusPeriod = 10 * time.Second

// notifier tells systemd (sd_notify, through $NOTIFY_SOCKET) how iserd is
// doing. Without $NOTIFY_SOCKET every call does nothing.
type notifier struct {
	log      *zap.Logger
	watchdog time.Duration // WatchdogSec, 0 when off
}

func newNotifier(log *zap.Logger) *notifier {
	n := &notifier{log: log}
	w, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("systemd watchdog settings ignored", zap.Error(err))
	}
	n.watchdog = w
	return n
}

// period is how often the main loop calls alive: half the watchdog
// interval, as sd_watchdog_enabled(3) advises, or statusPeriod.
func (n *notifier) period() time.Duration {
	if n.watchdog > 0 && n.watchdog/2 < statusPeriod {
		return n.watchdog / 2
	}
	return statusPeriod
}

func (n *notifier) send(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.log.Warn("sd_notify", zap.String("state", state), zap.Error(err))
	}
}

// ready reports that every portal listens.
func (n *notifier) ready(status string) { n.send(daemon.SdNotifyReady + "\nSTATUS=" + status) }

// reloading reports that a SIGHUP is being applied; ready follows.
func (n *notifier) reloading() { n.send(daemon.SdNotifyReloading) }

// stopping reports the start of the shutdown.
func (n *notifier) stopping() { n.send(daemon.SdNotifyStopping + "\nSTATUS=shutting down") }

// alive refreshes the status and, with a watchdog, pings it. The caller
// computed status from the engine just before, so a wedged engine stops
// the pings.
func (n *notifier) alive(status string) {
	state := "STATUS=" + status
	if n.watchdog > 0 {
		state = daemon.SdNotifyWatchdog + "\n" + state
	}
	n.send(state)
}

// status summarizes what iserd serves for STATUS=.
func status(m *admin.Manager) string {
	targets := m.Server().Targets()
	luns := 0
	for _, t := range targets {
		luns += len(t.SCSI.LUNs())
	}
	sessions := 0
	for _, s := range m.Server().Sessions() {
		if s.TargetName() != "" {
			sessions++
		}
	}
	return fmt.Sprintf("%d targets, %d LUNs, %d sessions", len(targets), luns, sessions)
}

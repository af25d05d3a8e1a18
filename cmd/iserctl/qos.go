package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/iserd/iserd/admin"
)

// qosScope is the --lun, --acl or --initiator-default choice of a qos
// command: where in the target the block goes.
type qosScope struct {
	lun              string
	acl              string
	initiatorDefault bool
}

func (s *qosScope) declare(fs *pflag.FlagSet) {
	fs.StringVar(&s.lun, "lun", "", "the LUN's limits (over all sessions)")
	fs.StringVar(&s.acl, "acl", "", "the limits and weight of this initiator (its ACL entry)")
	fs.BoolVar(&s.initiatorDefault, "initiator-default", false, "the limits of each initiator without its own (initiator_qos)")
}

// path is the API path of the block; acl says it takes an ACL body.
func (s *qosScope) path(target string) (p string, acl bool, err error) {
	n := 0
	for _, set := range []bool{s.lun != "", s.acl != "", s.initiatorDefault} {
		if set {
			n++
		}
	}
	switch {
	case n > 1:
		return "", false, usageError("give at most one of --lun, --acl and --initiator-default (none: the whole target)")
	case s.lun != "":
		if _, err := lunNumber(s.lun); err != nil {
			return "", false, err
		}
		return path("targets", target, "luns", s.lun, "qos"), false, nil
	case s.acl != "":
		return path("targets", target, "acls", s.acl, "qos"), true, nil
	case s.initiatorDefault:
		return path("targets", target, "initiator_qos"), false, nil
	}
	return path("targets", target, "qos"), false, nil
}

// rateFlag is a --bandwidth flag taking 40MiB or 40MiB/s.
type rateFlag struct{ v *admin.Rate }

func (r rateFlag) String() string {
	if r.v == nil {
		return "0"
	}
	return r.v.String()
}

func (r rateFlag) Set(v string) error {
	n, err := admin.ParseRate(v)
	*r.v = admin.Rate(n)
	return err
}

func (r rateFlag) Type() string { return "rate" }

func (a *app) qosCommand() *cobra.Command {
	c := group("qos", "rate limits per target, LUN and initiator, and weights")
	c.Long = "Rate limits hold commands at the front: a session under a limit gets a smaller CmdSN window " +
		"(what its share admits in half a second), so the initiator queues the rest itself and no command " +
		"waits in iserd for a second. Limits apply to the whole target (no scope flag), to one LUN (--lun), " +
		"to one initiator (--acl, which needs its ACL entry) or to each initiator without its own " +
		"(--initiator-default). --weight shares contended target and LUN limits between initiators. " +
		"Changes apply at once to the sessions logged in, without logging them out."

	showQ := leaf("show", "print a target's limits, what each limiter did and the sessions' windows", func(args []string) error {
		return show(a, path("targets", args[0], "qos"), a.qosDetails)
	}, "TARGET")

	var scope qosScope
	var q admin.QoSConfig
	var burst time.Duration
	var weight int
	var set *cobra.Command
	set = leaf("set", "set the limits of a target, LUN or initiator (the flags given make the whole block)", func(args []string) error {
		p, acl, err := scope.path(args[0])
		if err != nil {
			return err
		}
		q.Burst = admin.Duration(burst)
		fs := set.Flags()
		limits := false
		for _, name := range []string{"iops", "read-iops", "write-iops", "bandwidth", "read-bandwidth", "write-bandwidth", "burst"} {
			limits = limits || fs.Changed(name)
		}
		if fs.Changed("weight") && !acl {
			return usageError("--weight goes with --acl: it is an initiator's share")
		}
		if !limits && !fs.Changed("weight") {
			return usageError("nothing to set: give limits (--iops, --bandwidth...) or, with --acl, --weight")
		}
		if !acl {
			return a.change("PUT", p, q)
		}
		var body admin.ACLQoS
		if limits {
			body.QoS = &q
		}
		if fs.Changed("weight") {
			body.Weight = &weight
		}
		return a.change("PUT", p, body)
	}, "TARGET")
	f := set.Flags()
	scope.declare(f)
	f.Int64Var(&q.IOPS, "iops", 0, "commands per second")
	f.Int64Var(&q.ReadIOPS, "read-iops", 0, "reads per second")
	f.Int64Var(&q.WriteIOPS, "write-iops", 0, "writes per second")
	f.Var(rateFlag{&q.Bandwidth}, "bandwidth", "bytes per second, e.g. 40MiB")
	f.Var(rateFlag{&q.ReadBandwidth}, "read-bandwidth", "bytes read per second")
	f.Var(rateFlag{&q.WriteBandwidth}, "write-bandwidth", "bytes written per second")
	f.DurationVar(&burst, "burst", 0, "unused rate kept, as time at each rate (default 50ms)")
	f.IntVar(&weight, "weight", 0, "with --acl: the initiator's share of contended limits (1-1000, default 1)")

	var clearScope qosScope
	clear := leaf("clear", "remove the limits of a target, LUN or initiator (with --acl its weight too)", func(args []string) error {
		p, _, err := clearScope.path(args[0])
		if err != nil {
			return err
		}
		return a.change("DELETE", p, nil)
	}, "TARGET")
	clearScope.declare(clear.Flags())

	for _, cmd := range []*cobra.Command{showQ, set, clear} {
		cmd.ValidArgsFunction = a.completeArgs(a.targetNames)
	}
	c.AddCommand(showQ, set, clear)
	return c
}

// limitsOf formats a qos block as iops=2000 bandwidth=40MiB ...
func limitsOf(q *admin.QoSConfig) string {
	if q == nil {
		return "-"
	}
	var parts []string
	for _, f := range []struct {
		name string
		v    int64
		rate bool
	}{{"iops", q.IOPS, false}, {"read_iops", q.ReadIOPS, false}, {"write_iops", q.WriteIOPS, false},
		{"bandwidth", int64(q.Bandwidth), true}, {"read_bandwidth", int64(q.ReadBandwidth), true},
		{"write_bandwidth", int64(q.WriteBandwidth), true}} {
		switch {
		case f.v == 0:
		case f.rate:
			parts = append(parts, f.name+"="+admin.Rate(f.v).String()+"/s")
		default:
			parts = append(parts, f.name+"="+strconv.FormatInt(f.v, 10))
		}
	}
	if q.Burst != 0 {
		parts = append(parts, "burst="+q.Burst.String())
	}
	return strings.Join(parts, " ")
}

func (a *app) qosDetails(q admin.QoSInfo) {
	fmt.Fprintf(a.out, "target:         %s\n", q.Target)
	fmt.Fprintf(a.out, "qos:            %s\n", limitsOf(q.QoS))
	fmt.Fprintf(a.out, "initiator_qos:  %s\n", limitsOf(q.InitiatorQoS))
	for _, l := range q.LUNs {
		fmt.Fprintf(a.out, "lun %-10d  %s\n", l.LUN, limitsOf(l.QoS))
	}
	for _, acl := range q.ACLs {
		fmt.Fprintf(a.out, "acl %s  weight %d  %s\n", acl.Initiator, *acl.Weight, limitsOf(acl.QoS))
	}
	fmt.Fprintln(a.out)
	var rows [][]string
	for _, l := range q.Limiters {
		scope := l.Scope
		switch {
		case l.LUN != nil:
			scope += " " + strconv.FormatUint(*l.LUN, 10)
		case l.Initiator != "":
			scope += " " + l.Initiator
		}
		rows = append(rows, []string{scope, strconv.FormatUint(l.Admitted, 10), bytesOf(l.Bytes),
			strconv.FormatUint(l.Throttled, 10), fmt.Sprintf("%.1fs", l.ThrottledSeconds),
			strconv.FormatUint(l.Overdrawn, 10), strconv.Itoa(l.Queued), slowest(l.Wait)})
	}
	a.table("LIMITER\tADMITTED\tBYTES\tTHROTTLED\tWAITED\tOVERDRAWN\tQUEUED\tSLOWEST", rows)
	fmt.Fprintln(a.out)
	rows = nil
	for _, s := range q.Sessions {
		rows = append(rows, []string{strconv.Itoa(int(s.TSIH)), s.Initiator, strconv.FormatUint(uint64(s.Window), 10), yesNo(s.Limited)})
	}
	a.table("TSIH\tINITIATOR\tCMD-WINDOW\tLIMITED", rows)
}

// slowest names the highest wait bucket that holds a command: "< 250ms".
func slowest(bs []admin.LatencyBucket) string {
	for i := len(bs) - 1; i >= 0; i-- {
		if bs[i].Count > 0 {
			if bs[i].LE == "+Inf" {
				return ">= " + bs[i-1].LE
			}
			return "< " + bs[i].LE
		}
	}
	return "-"
}

package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/iserd/iserd/admin"
)

// completionTimeout bounds the questions a completion asks the daemon: a
// shell waiting on tab must not hang.
const completionTimeout = 2 * time.Second

// candidates lists the completions of one positional argument, given the
// arguments before it, each as "value" or "value\tdescription".
type candidates func(ctx context.Context, args []string) ([]string, error)

// completeArgs completes the positional arguments in order from the
// running daemon; when it cannot be reached there is nothing to offer.
func (a *app) completeArgs(each ...candidates) cobra.CompletionFunc {
	return func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if len(args) >= len(each) {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
		defer cancel()
		out, err := each[len(args)](ctx, args)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// fixedValues completes a flag from a fixed list.
func fixedValues(cmd *cobra.Command, flag string, values ...string) {
	cmd.RegisterFlagCompletionFunc(flag, cobra.FixedCompletions(values, cobra.ShellCompDirectiveNoFileComp))
}

func (a *app) targetNames(ctx context.Context, _ []string) ([]string, error) {
	var ts []admin.TargetInfo
	if err := a.client().Do(ctx, "GET", "/v1/targets", nil, &ts); err != nil {
		return nil, err
	}
	out := make([]string, 0, len(ts))
	for _, t := range ts {
		out = append(out, fmt.Sprintf("%s\t%d LUNs, %d sessions", t.Name, len(t.LUNs), t.Sessions))
	}
	return out, nil
}

// target fetches the target named by the first argument.
func (a *app) target(ctx context.Context, args []string) (admin.TargetInfo, error) {
	var t admin.TargetInfo
	err := a.client().Do(ctx, "GET", path("targets", args[0]), nil, &t)
	return t, err
}

func (a *app) lunNumbers(ctx context.Context, args []string) ([]string, error) {
	t, err := a.target(ctx, args)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(t.LUNs))
	for _, l := range t.LUNs {
		where := l.Path
		if l.Backend == "memory" {
			where = "memory"
		}
		out = append(out, fmt.Sprintf("%d\t%s %s", l.LUN, l.Size, where))
	}
	return out, nil
}

func (a *app) initiatorNames(ctx context.Context, args []string) ([]string, error) {
	t, err := a.target(ctx, args)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(t.ACLs))
	for _, acl := range t.ACLs {
		out = append(out, acl.Initiator)
	}
	return out, nil
}

func (a *app) sessionIDs(ctx context.Context, _ []string) ([]string, error) {
	var ss []admin.SessionInfo
	if err := a.client().Do(ctx, "GET", "/v1/sessions", nil, &ss); err != nil {
		return nil, err
	}
	out := make([]string, 0, len(ss))
	for _, s := range ss {
		what := s.Target
		if s.Type == "Discovery" {
			what = "discovery"
		}
		out = append(out, strconv.Itoa(int(s.TSIH))+"\t"+what+" from "+s.Initiator)
	}
	return out, nil
}

func (a *app) portalAddresses(ctx context.Context, _ []string) ([]string, error) {
	var ps []admin.PortalConfig
	if err := a.client().Do(ctx, "GET", "/v1/portals", nil, &ps); err != nil {
		return nil, err
	}
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Address)
	}
	return out, nil
}

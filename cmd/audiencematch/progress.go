package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"audiencematch/pipeline"
)

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progressLogInterval is how often a run off a terminal logs its progress.
const progressLogInterval = 30 * time.Second

// showProgress reports p until the returned stop is called: bars on a
// terminal (mpb), otherwise one log line every 30 seconds, so that a cron
// job's log shows it is alive and its mail stays empty.
func showProgress(ctx context.Context, p *pipeline.Progress, w io.Writer, log *slog.Logger) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	if !isTerminal(w) {
		go func() {
			defer close(done)
			t := time.NewTicker(progressLogInterval)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					ev, us, n, of := p.Counts()
					log.Info("progress", "stage", p.Stage(), "consent_events", ev, "users", us, "normalized", n, "to_normalize", of)
				}
			}
		}()
		return func() { cancel(); <-done }
	}
	bars := mpb.NewWithContext(ctx, mpb.WithOutput(w), mpb.WithWidth(32))
	bar := func(name string) *mpb.Bar {
		return bars.New(0, mpb.SpinnerStyle(), mpb.PrependDecorators(decor.Name(name, decor.WC{W: 18, C: decor.DindentRight})),
			mpb.AppendDecorators(decor.CurrentNoUnit("%d")))
	}
	events, users, norm := bar("consent events"), bar("users"), bar("normalized")
	go func() {
		defer close(done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			ev, us, n, _ := p.Counts()
			events.SetCurrent(ev)
			users.SetCurrent(us)
			norm.SetCurrent(n)
			select {
			case <-ctx.Done():
				for _, b := range []*mpb.Bar{events, users, norm} {
					b.SetTotal(-1, true)
				}
				return
			case <-t.C:
			}
		}
	}()
	return func() { cancel(); <-done; bars.Wait() }
}

// Package pg reads a run's users and consent events from PostgreSQL.
//
// Both tables are read in one read-only REPEATABLE READ transaction, so that
// users and consent come from the same instant, and streamed with
// COPY (SELECT ...) TO STDOUT (FORMAT csv): nothing is held in memory, and
// the rows go through the same field rules, rejects and digests as a file
// but for one: the stream is read with its quoting (source.NewCopyReader),
// so a value with a line break (a source of E'support ticket\n#123') is
// data, where a file's rule of one line, one row would break the row in
// two and lose a withdrawal. A reject's line is the record's number in the
// stream, the header being 1. Every column is rendered by
// to_json(col)#>>'{}', so a timestamptz arrives as RFC 3339 text
// (2026-10-01T12:00:00+00:00), an integer as its digits and a text column
// as it is; NULL arrives empty.
//
// Errors never quote the database's message or detail about a row: a
// failed conversion says "invalid input syntax for type integer: " and the
// value, which may be personal data, and errors reach logs and the audit
// log. They name the SQLSTATE, the table or query, and what to check.
//
// With table names, rows are ordered by the first column (user_id,
// event_id) so that the input digest, and with it the run id, does not
// depend on the physical order of the table. A query from the config file
// is used as it is: order it for the same reason.
package pg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/source"
)

// Options say where the tables are.
type Options struct {
	URL                      string // postgres://user:password@host:port/db?sslmode=...
	UsersTable, ConsentTable string // table names, possibly schema-qualified
	UsersQuery, ConsentQuery string // or queries returning the contract's columns
}

// Source is a source.Source over one PostgreSQL transaction.
type Source struct {
	opts Options
	conn *pgx.Conn
	tx   pgx.Tx
}

// New checks the options; it connects on the first Open.
func New(o Options) (*Source, error) {
	if o.URL == "" {
		return nil, fmt.Errorf("%w: --source needs a postgres:// URL", errkind.ErrUsage)
	}
	if _, err := pgx.ParseConfig(o.URL); err != nil {
		return nil, fmt.Errorf("%w: --source: %v", errkind.ErrUsage, redact(err.Error(), o.URL))
	}
	if o.UsersTable == "" && o.UsersQuery == "" {
		o.UsersTable = source.TableUsers
	}
	if o.ConsentTable == "" && o.ConsentQuery == "" {
		o.ConsentTable = source.TableConsent
	}
	return &Source{opts: o}, nil
}

func (s *Source) connect(ctx context.Context) error {
	if s.tx != nil {
		return nil
	}
	conn, err := pgx.Connect(ctx, s.opts.URL)
	if err != nil {
		return classify(err, s.opts.URL, "connect")
	}
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		conn.Close(ctx)
		return classify(err, s.opts.URL, "begin a read-only repeatable-read transaction")
	}
	s.conn, s.tx = conn, tx
	return nil
}

// query is the SELECT that yields table's columns as text.
func (s *Source) query(table string, columns []string) string {
	name, q := s.opts.UsersTable, s.opts.UsersQuery
	if table == source.TableConsent {
		name, q = s.opts.ConsentTable, s.opts.ConsentQuery
	}
	cols := make([]string, len(columns))
	for i, c := range columns {
		id := pgx.Identifier{c}.Sanitize()
		cols[i] = "to_json(t." + id + ")#>>'{}' AS " + id
	}
	if q != "" {
		return "SELECT " + strings.Join(cols, ", ") + " FROM (" + q + ") AS t"
	}
	return "SELECT " + strings.Join(cols, ", ") + " FROM " + pgx.Identifier(strings.Split(name, ".")).Sanitize() +
		" AS t ORDER BY t." + pgx.Identifier{columns[0]}.Sanitize()
}

// Open streams one table through COPY.
func (s *Source) Open(ctx context.Context, table string, columns []string) (source.RowReader, error) {
	if err := s.connect(ctx); err != nil {
		return nil, err
	}
	sql := "COPY (" + s.query(table, columns) + ") TO STDOUT WITH (FORMAT csv, HEADER true)"
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := s.tx.Conn().PgConn().CopyTo(ctx, pw, sql)
		if err != nil {
			err = classify(err, s.opts.URL, "read "+s.Name(table))
		}
		pw.CloseWithError(err)
	}()
	r, err := source.NewCopyReader(&pipeReader{pr, done}, columns)
	if err != nil {
		pr.CloseWithError(err)
		<-done
		return nil, fmt.Errorf("%s: %w", s.Name(table), err)
	}
	return r, nil
}

// pipeReader closes the read side and waits for the COPY to stop, so that
// the connection is free for the next table.
type pipeReader struct {
	*io.PipeReader
	done chan struct{}
}

func (p *pipeReader) Close() error {
	p.PipeReader.CloseWithError(errors.New("reader closed"))
	<-p.done
	return nil
}

// Name names the table or query for the manifest; never the URL.
func (s *Source) Name(table string) string {
	if table == source.TableUsers {
		if s.opts.UsersQuery != "" {
			return "postgres:query(users)"
		}
		return "postgres:" + s.opts.UsersTable
	}
	if s.opts.ConsentQuery != "" {
		return "postgres:query(consent_events)"
	}
	return "postgres:" + s.opts.ConsentTable
}

// Close ends the transaction (it only read) and the connection.
func (s *Source) Close() error {
	if s.conn == nil {
		return nil
	}
	ctx := context.Background()
	err := s.tx.Rollback(ctx)
	return errors.Join(err, s.conn.Close(ctx))
}

// classify turns a PostgreSQL failure into the run's error kinds. Connection
// failures, authentication failures and missing tables or columns are all
// "temporary" (exit 75): the database may be restarting, a password being
// rotated, a migration running; a retry may help, and the message says what
// to check. A value that cannot be converted (SQLSTATE class 22) is bad
// data (exit 65): a retry reads the same value. The URL's password never
// appears in the message, nor does a value of a row (see pgError).
func classify(err error, url, doing string) error {
	var pgErr *pgconn.PgError
	var netErr net.Error
	msg := redact(err.Error(), url)
	switch {
	case errors.As(err, &pgErr):
		return pgError(pgErr, doing)
	case errors.As(err, &netErr), pgconn.SafeToRetry(err), strings.Contains(msg, "connect"):
		return fmt.Errorf("%w: PostgreSQL: %s: %s; is the server up and reachable?", errkind.ErrTempFail, doing, msg)
	}
	return fmt.Errorf("%w: PostgreSQL: %s: %s", errkind.ErrTempFail, doing, msg)
}

// pgSchemaMessages are the SQLSTATE codes whose message names objects of
// the schema or of the query (a table, a column, a database, a function, a
// token of the query), never a value of a row, with what to check. Any
// other message, and every Detail, Hint and Where, may quote a value
// ("invalid input syntax for type integer: \"…\"", "Key (user_id)=(…)")
// and is not shown.
var pgSchemaMessages = map[string]string{
	"42P01": "check --users-table/--consent-table",
	"42703": "the table lacks a column of MATCHING.md section 1",
	"3D000": "check the database in --source",
	"42501": "grant the user of --source SELECT on the tables",
	"42601": "check the query in the config file",
	"42883": "check the query in the config file",
}

// pgConditions names the SQLSTATE codes of values that cannot be
// converted, as PostgreSQL's documentation does (Appendix A).
var pgConditions = map[string]string{
	"22P02": "invalid_text_representation",
	"22007": "invalid_datetime_format",
	"22008": "datetime_field_overflow",
	"22003": "numeric_value_out_of_range",
	"22001": "string_data_right_truncation",
	"22021": "character_not_in_repertoire",
	"22P05": "untranslatable_character",
	"22004": "null_value_not_allowed",
	"22012": "division_by_zero",
	"22023": "invalid_parameter_value",
}

// pgError is classify for an error the server reported. Only the fields
// that hold names are kept: the SQLSTATE, and the schema, table, column,
// data type and constraint names when the server gives them.
func pgError(e *pgconn.PgError, doing string) error {
	code := e.Code
	if name := pgConditions[code]; name != "" {
		code += " " + name
	}
	var objects []string
	for _, o := range []struct{ what, name string }{
		{"schema", e.SchemaName}, {"table", e.TableName}, {"column", e.ColumnName},
		{"type", e.DataTypeName}, {"constraint", e.ConstraintName},
	} {
		if o.name != "" {
			objects = append(objects, o.what+" "+strconv.Quote(o.name))
		}
	}
	where := ""
	if len(objects) > 0 {
		where = " (" + strings.Join(objects, ", ") + ")"
	}
	switch {
	case e.Code == "28P01" || e.Code == "28000":
		return fmt.Errorf("%w: PostgreSQL: %s: authentication failed (%s); check the user and password in --source", errkind.ErrTempFail, doing, e.Code)
	case pgSchemaMessages[e.Code] != "":
		return fmt.Errorf("%w: PostgreSQL: %s: %s (SQLSTATE %s); %s", errkind.ErrTempFail, doing, e.Message, e.Code, pgSchemaMessages[e.Code])
	case strings.HasPrefix(e.Code, "22"):
		return fmt.Errorf("%w: PostgreSQL: %s: a value could not be converted%s (SQLSTATE %s); check the casts of the query or the columns' types against MATCHING.md section 1; the server's message is not shown, as it quotes the value",
			errkind.ErrData, doing, where, code)
	}
	return fmt.Errorf("%w: PostgreSQL: %s: error%s (SQLSTATE %s, %s); the server's message is not shown, as it may quote a value of a row: see the server's log",
		errkind.ErrTempFail, doing, where, code, e.Severity)
}

// redact removes the password of url from s.
func redact(s, url string) string {
	cfg, err := pgx.ParseConfig(url)
	if err == nil && cfg.Password != "" {
		s = strings.ReplaceAll(s, cfg.Password, "*****")
	}
	return s
}

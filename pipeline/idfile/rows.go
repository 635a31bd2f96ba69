package idfile

// BinaryIDRow is a row of an hmac-sha256 export: FIXED_LEN_BYTE_ARRAY(32).
type BinaryIDRow struct {
	ID [32]byte `parquet:"id"`
}

// TextIDRow is a row of an export in a text scheme: a UTF-8 string.
type TextIDRow struct {
	ID string `parquet:"id"`
}

// EvidenceRow ties an exported identifier to a user row and the consent
// event that justified it. It is private: kept under <state>, never published.
type EvidenceRow struct {
	ID      string `parquet:"id"` // hex for hmac-sha256, the identifier text otherwise
	UserID  string `parquet:"user_id"`
	EventID string `parquet:"event_id"`
	Primary bool   `parquet:"primary"` // the holder counted as exported; others are duplicate_number
}

// WideIDRow is a row of an oprf-ristretto255 export: FIXED_LEN_BYTE_ARRAY(64).
type WideIDRow struct {
	ID [64]byte `parquet:"id"`
}

/*
 * Mailward's own rules. MIT licence, like the rest of Mailward.
 * meta.category: malware | phishing | filetype | macro | spam (default malware)
 * meta.severity: info | low | medium | high | critical (default high)
 */

rule EICAR_Test_File
{
    meta:
        description = "EICAR anti-virus test file (harmless, used to prove the scanner works)"
        category = "malware"
        severity = "critical"
    strings:
        $eicar = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
    condition:
        $eicar at 0 and filesize < 256
}
